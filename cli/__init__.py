"""The `seqport` command line: one module per subcommand group, outside the engine.

`seqport generate/embed/classify/info/bench` need only the runtime install; `export` and `demo`
import the export side (torch) only when they run, and say what to install when it is missing.
"""
