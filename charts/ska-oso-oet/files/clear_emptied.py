"""Delete the device properties that a dsconfig JSON file lists as empty ([]).

json2tango's update mode (-u) leaves such properties as they were, so emptying a list in the
configuration (say AllowedGitRepositories, to revoke git scripts) would otherwise change
nothing. The chart's dsconfig job runs this after json2tango; `make run` (ska_oso_oet.run)
uses the same function. Only the standard library and PyTango.
"""

import json
import sys
from typing import Any

import tango


def clear_emptied(config: dict[str, Any], db: Any) -> list[Any]:
    """Delete the properties ``config`` lists as ``[]``; return the calls made, in
    dsconfig's (method, args, kwargs) form."""
    calls: list[Any] = []
    for instances in config["servers"].values():
        for classes in instances.values():
            for devices in classes.values():
                for name, device in devices.items():
                    for prop, values in device.get("properties", {}).items():
                        if values == [] and list(db.get_device_property(name, [prop])[prop]):
                            db.delete_device_property(name, [prop])
                            calls.append(("delete_device_property", (name, [prop]), {}))
    return calls


def main(path: str) -> int:
    with open(path) as f:
        config = json.load(f)
    for _, (name, props), _ in clear_emptied(config, tango.Database()):
        print(f"dsconfig: removed {name}/{props[0]} (empty in the configuration)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
