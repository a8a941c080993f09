"""The suite's own guards work: outside connections fail, loopback works, hubs are offline."""
import os
import socket
import threading

import pytest


def test_outside_connection_is_refused():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(RuntimeError, match="network connection"):
        s.connect(("93.184.216.34", 80))
    s.close()


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    t = threading.Thread(target=lambda: server.accept()[0].close())
    t.start()
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.close()
    t.join(5)
    server.close()


def test_hub_offline_variables_set():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
