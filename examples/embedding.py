"""
Embedding infini-gateway in an existing Twisted application.

    python examples/embedding.py [PORT]

It runs two things in one process, from one dict-shaped configuration:

- the gateway's own service tree (an entry on 127.0.0.1:PORT, default 8080),
  added to the application's service tree like any other service;
- the same router mounted at /api inside the application's own twisted.web
  Site (127.0.0.1:PORT+1), next to the application's other resources.

Try ``curl http://127.0.0.1:8080/hello`` and ``curl http://127.0.0.1:8081/api/hello``.
"""

import sys

from twisted.application.internet import TCPServer
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from infini_gateway import build_router, build_service


def configuration(port):
    return {
        "entry": [
            {"name": "embedded", "router": "default", "network": {"binding": f"127.0.0.1:{port}"}}
        ],
        "router": [
            {
                "name": "default",
                "rules": [{"method": ["GET"], "pattern": ["/hello"], "flow": ["hello"]}],
            }
        ],
        "flow": [{"name": "hello", "filter": [{"echo": {"message": "hello, embedded\n"}}]}],
    }


def main(port=8080):
    config = configuration(port)
    application = MultiService()

    # 1. The whole gateway as a child service of the application.
    build_service(config, reactor=reactor).setServiceParent(application)

    # 2. The router as a Resource inside the application's own Site.
    root = Resource()
    root.putChild(b"", Data(b"the application's own page\n", "text/plain"))
    root.putChild(b"api", build_router(config, name="default", reactor=reactor))
    TCPServer(port + 1, Site(root), interface="127.0.0.1").setServiceParent(application)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    application.startService()
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
