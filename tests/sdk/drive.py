#!/usr/bin/env python3
"""Drives one real Python SDK against the edge: every call type once, then flush.

    drive.py <posthog-python|segment-python|rudder-python> <host> <key> <run> [retries-expected <flood>]

Prints one JSON line with what the SDK logged at WARNING or above and what it reported through
on_error; exits 1 if there is anything (an error, a warning or a retry). With
`retries-expected` (a rate-limited run) only errors count: reported through on_error or
logged at ERROR."""
import json
import logging
import sys

sdk, host, key, run = sys.argv[1:5]
retries_expected = sys.argv[5:6] == ["retries-expected"]
if sys.argv[6:7]:
    # Spend the organisation's rate first, right before the SDK sends: its batch meets a 429.
    import urllib.request
    flood = json.dumps([{"event_type": "t", "event_name": "flood", "device_id": f"flood-{i}"} for i in range(int(sys.argv[6]))])
    req = urllib.request.Request(f"{host}/v1/events/batch", data=flood.encode(), headers={"X-Api-Key": key, "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
problems = []


class Catch(logging.Handler):
    def emit(self, record):
        serious = record.levelno >= logging.ERROR if retries_expected else record.levelno >= logging.WARNING
        if serious or (not retries_expected and "retry" in record.getMessage().lower()):
            problems.append(f"{record.name}: {record.getMessage()}")


logging.basicConfig(level=logging.DEBUG, handlers=[Catch()])


def on_error(error, batch):
    problems.append(f"on_error: {error}")


user = f"user-{run}"
if sdk == "posthog-python":
    from posthog import Posthog

    c = Posthog(key, host=host, on_error=on_error)
    c.capture("button_clicked", distinct_id=user, properties={"run": run})
    c.set(distinct_id=user, properties={"email": "a@example.com", "run": run})
    c.alias(previous_id=f"anon-{run}", distinct_id=user)
    c.group_identify("company", f"co-{run}", properties={"run": run}, distinct_id=user)
    c.capture("$pageview", distinct_id=user, properties={"$current_url": "https://x.example/", "run": run})
    c.capture("$screen", distinct_id=user, properties={"$screen_name": "Home", "run": run})
    c.capture("purchase", distinct_id=user, properties={"revenue": 9.99, "currency": "EUR", "run": run})
    c.flush()
    c.shutdown()
else:
    if sdk == "segment-python":
        from segment.analytics import Client
    else:
        from rudderstack.analytics import Client
    c = Client(key, host=host, on_error=on_error)
    c.track(user_id=user, event="Button Clicked", properties={"run": run})
    c.identify(user_id=user, traits={"email": "a@example.com", "run": run})
    c.alias(previous_id=f"anon-{run}", user_id=user)
    c.group(user_id=user, group_id=f"co-{run}", traits={"run": run})
    c.page(user_id=user, name="Home", properties={"run": run})
    c.screen(user_id=user, name="Home", properties={"run": run})
    c.track(user_id=user, event="Order Completed", properties={"revenue": 9.99, "currency": "EUR", "run": run})
    c.flush()
    c.shutdown()

print(json.dumps({"sdk": sdk, "sent": 7, "problems": problems}))
sys.exit(1 if problems else 0)
