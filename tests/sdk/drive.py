#!/usr/bin/env python3
"""Drives one real Python SDK against the edge: every call type once, then flush.

    drive.py <posthog-python|segment-python|rudder-python> <host> <key> <run>

Prints one JSON line with what the SDK logged at WARNING or above and what it reported through
on_error; exits 1 if there is anything (an error, a warning or a retry)."""
import json
import logging
import sys

sdk, host, key, run = sys.argv[1:5]
problems = []


class Catch(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING or "retry" in record.getMessage().lower():
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
