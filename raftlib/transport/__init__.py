"""Peer-to-peer transport: framing codec and TCP/Unix sockets."""
