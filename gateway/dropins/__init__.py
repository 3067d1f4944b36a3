"""
The package drop-in plugins are imported into.

At start-up the configured drop-in directories are appended to this package's ``__path__`` and
scanned with ``twisted.plugin.getPlugins`` (see `gateway.assembly.load_plugins`); a drop-in file
``loud.py`` becomes the module ``gateway.dropins.loud``. It is empty on purpose.
"""
