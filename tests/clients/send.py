#!/usr/bin/env python3
"""Send one message with Python's smtplib: the client the README's quickstart uses.

Example: python3 tests/clients/send.py --port 2525 --to alice@localhost
"""
import argparse
import smtplib
import ssl
import sys
from email.message import EmailMessage

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=2525)
p.add_argument("--from", dest="sender", default="me@example.com")
p.add_argument("--to", action="append", required=True)
p.add_argument("--subject", default="Hello from Sluice")
p.add_argument("--body", default="It works.\n")
p.add_argument("--starttls", action="store_true")
p.add_argument("--user")
p.add_argument("--password")
a = p.parse_args()

msg = EmailMessage()
msg["From"] = a.sender
msg["To"] = ", ".join(a.to)
msg["Subject"] = a.subject
msg.set_content(a.body)

with smtplib.SMTP(a.host, a.port, timeout=30) as s:
    s.ehlo("client.test")
    if a.starttls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # Sluice's default certificate is self-signed
        s.starttls(context=ctx)
        s.ehlo("client.test")
    if a.user:
        s.login(a.user, a.password)
    refused = s.send_message(msg)
    if refused:
        print("refused:", refused, file=sys.stderr)
        sys.exit(1)
    print("sent")
