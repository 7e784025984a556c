"""`python -m training` runs the leadscore CLI."""

from training.cli import app

if __name__ == "__main__":
    app()
