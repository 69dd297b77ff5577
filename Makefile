# The two entry points of the README. Both create .venv on a fresh machine first.
.PHONY: setup quickstart test
setup:
	bash tools/setup_env.sh

quickstart: setup
	bash examples/quickstart.sh

test: setup
	bash tools/run_tests.sh
