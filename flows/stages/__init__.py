"""The stages of a turn, one module each; flows/assembly.py puts them in their order."""
