"""The SMTP sink server: accepts every message on SMTP and serves them over HTTP.

The HTTP routes are a subset of Mailpit's API (`/api/v1/messages`, `/api/v1/message/{id}`,
`/api/v1/search?query=to:...`, `DELETE /api/v1/messages`, `/livez`), so the same client code
reads mail from this sink natively and from a Mailpit container under Docker Compose.

Run: python -m simulations.mail.sink --smtp-port 11025 --http-port 18025
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import itertools
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class StoredMessage:
    id: str
    envelope_from: str
    envelope_to: tuple[str, ...]
    parsed: EmailMessage
    raw_size: int
    created: datetime

    def summary(self) -> dict[str, Any]:
        text = self.text()
        return {
            "ID": self.id,
            "MessageID": self.parsed.get("Message-ID", ""),
            "From": address(self.parsed.get("From", self.envelope_from)),
            "To": [address(value) for value in self.recipients()],
            "Subject": self.parsed.get("Subject", ""),
            "Created": self.created.isoformat(),
            "Size": self.raw_size,
            "Snippet": " ".join(text.split())[:250],
        }

    def detail(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "Text": self.text(),
            "HTML": self.body("html"),
            "Headers": {key: self.parsed.get_all(key, []) for key in set(self.parsed.keys())},
        }

    def recipients(self) -> list[str]:
        headers = self.parsed.get_all("To", []) + self.parsed.get_all("Cc", [])
        named = [addr for _, addr in getaddresses(headers) if addr]
        return sorted(set(named) | set(self.envelope_to))

    def text(self) -> str:
        return self.body("plain")

    def body(self, subtype: str) -> str:
        part = self.parsed.get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None else ""


def address(value: str) -> dict[str, str]:
    name, addr = getaddresses([value])[0]
    return {"Name": name, "Address": addr}


def matches(message: StoredMessage, query: str) -> bool:
    """Mailpit-style search terms, all of which must match: to:, from:, subject:, or free text."""
    summary = message.summary()
    for term in query.split():
        key, _, wanted = term.partition(":")
        wanted = wanted.lower()
        if key == "to" and wanted:
            found = any(wanted in recipient.lower() for recipient in message.recipients())
        elif key == "from" and wanted:
            found = wanted in summary["From"]["Address"].lower()
        elif key == "subject" and wanted:
            found = wanted in summary["Subject"].lower()
        else:
            found = term.lower() in (summary["Subject"] + " " + message.text()).lower()
        if not found:
            return False
    return True


class Mailbox:
    """Everything received, newest first, as Mailpit lists it."""

    def __init__(self) -> None:
        self.messages: list[StoredMessage] = []
        self._ids = itertools.count(1)

    # aiosmtpd handler hook
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.insert(
            0,
            StoredMessage(
                id=str(next(self._ids)),
                envelope_from=envelope.mail_from or "",
                envelope_to=tuple(envelope.rcpt_tos),
                parsed=parsed,
                raw_size=len(raw),
                created=datetime.now(UTC),
            ),
        )
        return "250 Message accepted for delivery"

    def listing(self, found: list[StoredMessage]) -> dict[str, Any]:
        return {
            "total": len(self.messages),
            "messages_count": len(found),
            "messages": [message.summary() for message in found],
        }


def build_api(mailbox: Mailbox) -> web.Application:
    async def list_messages(request: web.Request) -> web.Response:
        return web.json_response(mailbox.listing(mailbox.messages))

    async def search(request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        return web.json_response(mailbox.listing([m for m in mailbox.messages if matches(m, query)]))

    async def get_message(request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        for message in mailbox.messages:
            if message.id == wanted:
                return web.json_response(message.detail())
        raise web.HTTPNotFound(text=f"no message with ID {wanted}")

    async def delete_all(request: web.Request) -> web.Response:
        mailbox.messages.clear()
        return web.json_response({"deleted": True})

    async def livez(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes(
        [
            web.get("/api/v1/messages", list_messages),
            web.delete("/api/v1/messages", delete_all),
            web.get("/api/v1/search", search),
            web.get("/api/v1/message/{id}", get_message),
            web.get("/livez", livez),
        ]
    )
    return app


async def serve(smtp_port: int, http_port: int) -> None:
    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(mailbox, hostname="smtp-sink.local"), host="127.0.0.1", port=smtp_port)
    runner = web.AppRunner(build_api(mailbox), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    print(f"smtp sink: SMTP on 127.0.0.1:{smtp_port}, API on http://127.0.0.1:{http_port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    smtp.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.smtp_port, args.http_port))


if __name__ == "__main__":
    main()
