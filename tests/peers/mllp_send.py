#!/usr/bin/env python3
"""Sends HL7 v2 files with python-hl7's MLLP client; prints one ACK per line (\\r as |CR|).

usage: mllp_send.py HOST PORT FILE...
"""
import sys

from hl7.client import MLLPClient


def main(argv):
    host, port, files = argv[1], int(argv[2]), argv[3:]
    with MLLPClient(host, port, encoding="utf-8") as client:
        for name in files:
            with open(name, encoding="utf-8", newline="") as f:
                text = f.read().replace("\r\n", "\r").replace("\n", "\r")
            ack = client.send_message(text)
            if isinstance(ack, bytes):
                ack = ack.decode("utf-8")
            print(ack.strip("\x0b\x1c\r").replace("\r", "|CR|"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
