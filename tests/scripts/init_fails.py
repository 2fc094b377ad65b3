def init(subarray_id):
    raise ValueError(f"subarray {subarray_id} is not available")


def main():
    pass
