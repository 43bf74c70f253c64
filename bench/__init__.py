"""The performance benchmark (README.md here): `python -m bench.run`; each part is a module with a main()."""
