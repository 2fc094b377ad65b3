"""Delete the device properties that a dsconfig JSON file lists as empty ([]).

json2tango's update mode (-u) leaves such properties as they were, so emptying a list in the
chart's values (say AllowedGitRepositories, to revoke git scripts) would otherwise change
nothing. Run by dsconfig.sh after json2tango; uses only the standard library and PyTango.
"""

import json
import sys

import tango


def main(path: str) -> int:
    with open(path) as f:
        config = json.load(f)
    db = tango.Database()
    for instances in config["servers"].values():
        for classes in instances.values():
            for devices in classes.values():
                for name, device in devices.items():
                    for prop, values in device.get("properties", {}).items():
                        if values == [] and list(db.get_device_property(name, [prop])[prop]):
                            db.delete_device_property(name, [prop])
                            print(f"dsconfig: removed {name}/{prop} (empty in the configuration)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
