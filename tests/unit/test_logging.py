"""The JSON log lines every process writes."""

from __future__ import annotations

import json
import logging

from tertulia.common.logging import JsonFormatter


def test_a_record_is_one_json_object_with_its_extras_but_not_kopfs_settings() -> None:
    record = logging.LogRecord(
        "kopf.objects", logging.INFO, "", 0, "Handler succeeded.", None, None
    )
    # What kopf attaches to the records about an object.
    record.k8s_ref = {"namespace": "bots", "name": "helpdesk"}
    record.settings = object()
    record.k8s_skip = False
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "Handler succeeded."
    assert entry["level"] == "info" and entry["logger"] == "kopf.objects"
    assert entry["k8s_ref"] == {"namespace": "bots", "name": "helpdesk"}
    assert "settings" not in entry and "k8s_skip" not in entry
