"""A hostile SSH server: what root on a client can run on its SSH port (it owns the host
key). It accepts the server's key, and answers every request by pushing data without
regard to the channel window, which paramiko (the server's control channel) buffers
without limit unless it is read all along.

Usage: python hostile_ssh.py MODE HOST_KEY   (prints the port, then serves until killed)
MODE: ``stderr`` (endless standard error, terminal escapes and forged lines), ``stdout``
(endless output). Used by tests/integration/test_hostile_clients.py.
"""

from __future__ import annotations

import socket
import sys
import threading

import paramiko
from paramiko.common import cMSG_CHANNEL_DATA, cMSG_CHANNEL_EXTENDED_DATA
from paramiko.message import Message

CHUNK = b"\x1b[2J[good] stored: everything is fine\n" * 900  # about 32 KiB


class _Server(paramiko.ServerInterface):
    def __init__(self, mode: str):
        self.mode = mode

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        threading.Thread(target=_flood, args=(channel, self.mode), daemon=True).start()
        return True


def _flood(channel, mode: str) -> None:
    transport = channel.get_transport()
    try:
        while True:
            message = Message()
            message.add_byte(cMSG_CHANNEL_EXTENDED_DATA if mode == "stderr" else cMSG_CHANNEL_DATA)
            message.add_int(channel.remote_chanid)
            if mode == "stderr":
                message.add_int(1)  # SSH_EXTENDED_DATA_STDERR
            message.add_string(CHUNK)
            transport._send_user_message(message)  # the window is not looked at
    except Exception:
        return  # the server hung up


def main() -> None:
    mode, key_file = sys.argv[1], sys.argv[2]
    host_key = paramiko.Ed25519Key.from_private_key_file(key_file)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    print(listener.getsockname()[1], flush=True)
    while True:
        connection, _ = listener.accept()
        transport = paramiko.Transport(connection)
        transport.add_server_key(host_key)
        transport.start_server(server=_Server(mode))


if __name__ == "__main__":
    main()
