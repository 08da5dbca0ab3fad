"""``python -m lit_vattn.arch``: the README's method table, from the registry."""

from lit_vattn.arch.registry import method_table

print(method_table(), end="")
