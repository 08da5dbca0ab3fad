"""The README's method table, from the registry: ``python -m lit_vattn.arch.method_table``."""

from __future__ import annotations

from lit_vattn.arch.registry import methods


def method_table() -> str:
    """The README's method table: one row per registered method with its paper, what it reads, its
    config, its cost (training FLOPs per token and parameters against vanilla at the GPT-2 small
    shape, measured on a meta-device twin) and whether it starts as vanilla."""
    import torch

    from lit_vattn.model.config import GPTConfig
    from lit_vattn.model.decoder import GPT

    cfg, vocab, T = GPTConfig(n_layer=12, n_head=12, d_model=768, max_seq_len=1024), 50257, 1024

    def cost(cls) -> tuple[int, float]:
        with torch.device("meta"):
            net = GPT(cfg, vocab, cls())
        return net.num_params(), net.flops_per_token(T)

    base_params, base_flops = cost(methods()["vanilla"].cls)
    rows = [
        "| method | paper | reads | config | FLOPs/token | params | vanilla at init |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods().values():
        params, flops = cost(m.cls)
        controls = f"; controls: {', '.join(f'`{c}`' for c in m.controls)}" if m.controls else ""
        rows.append(
            f"| **`{m.name}`** {m.title} | {m.paper} | {m.reads} | `configs/arch/{m.name}.yaml`{controls} | "
            f"{flops / base_flops:.3f}x | {params / base_params:.3f}x | {'yes' if m.exact_at_init else 'no'} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(method_table(), end="")
