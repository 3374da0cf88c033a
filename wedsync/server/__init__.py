"""The server process: uvicorn with a graceful drain and a worker supervisor (``serve``),
the command lines that start it (``asgi_server``), collector tuning (``gctune``), the
lean token endpoint (``token_api``) and the process code of ``runstack``."""
