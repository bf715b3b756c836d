"""Stage `preflight`, the first: every dataset or weights file the params need is present or downloadable, the
device exists and the disk has room, checked in seconds, so a missing file fails here and not after hours of
training (`prepare` depends on this stage's output). Writes the disk estimate."""
from driftin import cli
from driftin.config import load_params
from driftin.files import write_json
from driftin.preflight import run


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--metrics", required=True)
    args = p.parse_args()
    write_json(args.metrics, run(load_params(args.params)))


if __name__ == "__main__":
    cli.run(main)
