"""``python -m dbl_kernels.demo``: what the Distribution-Balanced loss does on long-tailed data.

Needs the optional extras (``pip install scikit-learn matplotlib tqdm``: scikit-learn, matplotlib, tqdm).
"""


def main(argv=None):
    """Run the demo with command-line arguments ``argv``; returns the exit status."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
