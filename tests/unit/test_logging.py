import logging

from leadsla.logging import configure


def test_request_urls_are_not_logged() -> None:
    """httpx logs each request URL at INFO; webhook URLs can carry secrets (Slack-style tokens)."""
    configure("INFO")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("leadsla").isEnabledFor(logging.INFO)
