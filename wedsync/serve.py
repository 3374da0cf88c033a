"""``python -m wedsync.serve``: the operator's entry point of the server process, kept
where operators, process managers and container commands expect it. The code lives in
``wedsync.server.serve``."""

from wedsync.server.serve import main

if __name__ == "__main__":
    main()
