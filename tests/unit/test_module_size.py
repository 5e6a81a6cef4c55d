"""No module in node/ or cluster/ is over 700 lines (issue 9, Done when). A module that long does
several jobs; split it along a real seam (one job per module, each with a docstring saying why it
exists) rather than raise the limit."""

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "cluster")
MODULE_LINES_MAX = 700


def module_lines() -> dict[str, int]:
    return {str(path.relative_to(REPOSITORY)): len(path.read_text(encoding="utf-8").splitlines())
            for package in PACKAGES for path in sorted((REPOSITORY / package).rglob("*.py"))}


def test_no_module_in_node_or_cluster_is_over_the_line_limit():
    lines = module_lines()
    assert len(lines) > 50, f"found only {len(lines)} modules under {PACKAGES}: is REPOSITORY right?"
    too_long = {name: count for name, count in lines.items() if count > MODULE_LINES_MAX}
    assert not too_long, (f"modules over {MODULE_LINES_MAX} lines: {too_long}; split each along a real seam "
                          "(one job per module) instead of raising the limit")
