"""
The two legs of a call, as thin Autobahn protocols: they turn frames into events for the
`gateway.call.Call` and events into frames, and hold no decisions.
"""
