"""Wait until the Tango database holds this instance's device configuration.

Run before the device server starts (an init container), so that the server neither exits
because its instance is not yet registered nor starts with properties that the dsconfig job has
not yet written (after an upgrade that changed them).

``python wait_for_device.py CONFIG.json INSTANCE [TIMEOUT]``: CONFIG.json is the dsconfig JSON
the job writes; the database is the one at TANGO_HOST. Exits 0 once every device of INSTANCE is
registered to that server instance with exactly the configured properties; exits 1 with the
reason after TIMEOUT seconds (default 600).
"""

import json
import sys
import time

import tango


def missing(config, instance):
    """What the database still lacks for ``instance``; "" when it has everything."""
    db = tango.Database()
    for server, instances in config["servers"].items():
        for devices in instances[instance].values():
            for name, device in devices.items():
                info = db.get_device_info(name)
                if info.ds_full_name.lower() != f"{server}/{instance}".lower():
                    return f"{name} is registered to {info.ds_full_name}, not {server}/{instance}"
                want = device.get("properties", {})
                have = db.get_device_property(name, list(want))
                for prop, values in want.items():
                    if list(have[prop]) != list(values):
                        return f"{name} has {prop} = {list(have[prop])}, not {values}"
    return ""


def main(argv):
    path, instance = argv[1], argv[2]
    timeout = float(argv[3]) if len(argv) > 3 else 600.0
    with open(path) as f:
        config = json.load(f)
    deadline = time.monotonic() + timeout
    while True:
        try:
            reason = missing(config, instance)
        except tango.DevFailed as exc:
            reason = " ".join(str(exc.args[0].desc).split()) if exc.args else str(exc)
        if not reason:
            print(f"wait_for_device: instance {instance} is configured in the Tango database")
            return 0
        if time.monotonic() > deadline:
            print(f"wait_for_device: gave up after {timeout:g} s: {reason}", file=sys.stderr)
            return 1
        print(f"wait_for_device: waiting: {reason}", flush=True)
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
