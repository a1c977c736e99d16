"""Imported first by every root script, for one effect: until `draw.cli.run` calls the script's
`main`, a Ctrl-C (in the seconds torch and the script's other modules take to load) prints one
line instead of a traceback of whatever module was loading. It loads before torch because the
package's own names load on first use (draw/__init__.py). Code that uses draw as a library
never imports it, and keeps Python's own handling of Ctrl-C.
"""
import sys

from draw.cli import StartupHook

if not isinstance(sys.excepthook, StartupHook):
    sys.excepthook = StartupHook(sys.excepthook)
