from niche.cli import run

run()
