"""What ``oprunner dev`` prints names the app it serves, not the bundled billing app."""

from __future__ import annotations

from runner import IO, App, Meta, Model, OperationRegistry, Policy, define_command, install_op
from runner.cli.dev import DEV_SECRET, _banner, _uses_stripe
from runner.settings import Settings


class NoteInput(Model):
    note_id: str
    body: str
    pinned: bool = False


class NoteOutput(Model):
    note_id: str


AddNote = define_command(
    meta=Meta(key="notes.add", version="1.0.0", description="Add a note"),
    io=IO(input=NoteInput, output=NoteOutput),
    policy=Policy(auth="user"),
)


async def add(value: NoteInput, ctx: object) -> NoteOutput:
    return NoteOutput(note_id=value.note_id)


def _settings(**extra: object) -> Settings:
    return Settings(  # type: ignore[call-arg]
        kafka_bootstrap="127.0.0.1:9092",
        database_url="postgresql://u@127.0.0.1/db",
        jwt_secret=DEV_SECRET,
        http_port=8001,
        _env_file=None,
        **extra,
    )


def test_the_banner_names_the_app_its_operations_and_webhooks() -> None:
    registry = OperationRegistry()
    install_op(registry, AddNote, add)
    notes = App(registry=registry, name="notes", webhooks={"notes": lambda settings: None})
    text = _banner(_settings(), notes, "notes:app")
    assert "the app 'notes': 1 operations" in text and "command  notes.add 1.0.0" in text
    assert "/webhooks/notes" in text and "billing" not in text.lower() and "stripe" not in text.lower()
    assert 'oprunner call notes.add \'{"noteId":"example","body":"example"}\' --app notes:app' in text
    assert not _uses_stripe(notes)


def test_the_billing_app_gets_stripe_and_its_seeded_example() -> None:
    from handlers import app as billing

    assert _uses_stripe(billing)
    text = _banner(_settings(stripe_api_base="http://127.0.0.1:12111"), billing, "handlers:app")
    assert "the app 'billing'" in text and "Stripe       http://127.0.0.1:12111" in text
    assert 'call billing.capturePayment \'{"invoiceId":"inv_demo_paid"' in text and "--app" not in text
