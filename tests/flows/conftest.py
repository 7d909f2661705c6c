"""The running-bot fixtures of tests/bot, for the end-to-end flow tests."""

from tests.bot.conftest import bot, start_bot

__all__ = ["bot", "start_bot"]
