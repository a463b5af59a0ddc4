"""``python -m dbl_kernels.demo``: what the Distribution-Balanced loss does on long-tailed data.

Needs the optional extras (``pip install 'dbl_kernels[demo]'``: scikit-learn, matplotlib, tqdm).
"""


def main(argv=None):
    """Run the demo with command-line arguments ``argv``; returns the exit status."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
