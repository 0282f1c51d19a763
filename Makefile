.PHONY: style quality test bench

style:
	ruff check --fix peft_slider tests examples benchmarks
	ruff format peft_slider tests examples benchmarks

quality:
	ruff check peft_slider tests examples benchmarks

test:
	python -m pytest -q tests

bench:
	python benchmarks/run_all.py
