"""Named shapes: the SPEC §10 table, plus small ``cpu-tiny*`` presets that run on a CPU in seconds.

A preset is a flat dict of sizes. A case applies to a preset when the preset has every key the
case needs (``Case.needs``), so e.g. the UniMixing op runs at ``rankmixer-100m`` (it has ``B``)
but the UniMixer block does not (no pSwiGLU width ``h``).

Keys: ``bs`` batch; ``T`` tokens, ``D`` width, ``B`` UniMixing block (``N = T*D/B``); ``r``, ``nb``
Lite rank and number of local bases; ``h`` pSwiGLU width; ``ffn_mult`` RankMixer's PFFN ``k``;
``n``, ``d``, ``fm_k`` Wukong FM / DLRM features, width and FM rank; ``iters``, ``tau`` Sinkhorn
(K=20, tau=0.05 everywhere unless a preset says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SINKHORN_DEFAULTS = {"iters": 20, "tau": 0.05}

_TABLE: dict[str, dict] = {
    # SPEC §10
    "paper-small": dict(bs=2048, T=32, D=128, B=4, r=128, nb=4, h=176),
    "lite-2.5m": dict(bs=2048, T=16, D=96, B=4, r=48, nb=4, h=128),
    "paper-100m": dict(bs=2048, T=32, D=512, B=4, r=256, nb=4, h=688),
    "rankmixer-100m": dict(bs=2048, T=16, D=768, B=48, ffn_mult=4),
    "rankmixer-1b": dict(bs=512, T=32, D=1536, B=48, ffn_mult=4),
    "wukong": dict(bs=4096, n=64, d=256, fm_k=32),
    "dlrm-criteo": dict(bs=8192, n=27, d=128),
    # small shapes for the CPU (same structure, N=64 / 16). K=4 Sinkhorn iterations, not 20: the
    # compile of a K=20 block takes minutes on a small CPU, and these presets only smoke-test.
    "cpu-tiny": dict(bs=64, T=8, D=32, B=4, r=16, nb=4, h=48, iters=4),
    "cpu-tiny-rankmixer": dict(bs=64, T=4, D=48, B=12, ffn_mult=2, iters=4),
    "cpu-tiny-wukong": dict(bs=64, n=16, d=32, fm_k=8),
    "cpu-tiny-dlrm": dict(bs=128, n=9, d=16),
}

GPU_PRESETS = ("paper-small", "lite-2.5m", "paper-100m", "rankmixer-100m", "rankmixer-1b", "wukong",
               "dlrm-criteo")
CPU_PRESETS = ("cpu-tiny", "cpu-tiny-rankmixer", "cpu-tiny-wukong", "cpu-tiny-dlrm")


@dataclass(frozen=True)
class Preset:
    name: str
    sizes: dict = field(hash=False)

    def __getitem__(self, key: str):
        if key == "N":
            return self.sizes["T"] * self.sizes["D"] // self.sizes["B"]
        if key in self.sizes:
            return self.sizes[key]
        if key in SINKHORN_DEFAULTS:
            return SINKHORN_DEFAULTS[key]
        raise KeyError(f"preset {self.name!r} has no size {key!r} (it has {sorted(self.sizes)})")

    def has(self, keys) -> bool:
        return all(k in self.sizes or k in SINKHORN_DEFAULTS or (k == "N" and "B" in self.sizes)
                   for k in keys)

    def with_bs(self, bs: int) -> Preset:
        """The same shapes at another batch size (for the batch sweep); keeps the name."""
        return Preset(self.name, {**self.sizes, "bs": int(bs)})

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.sizes.items()]
        if "B" in self.sizes and "T" in self.sizes:
            parts.insert(parts.index(f"B={self.sizes['B']}") + 1, f"N={self['N']}")
        return " ".join(parts)


PRESETS: dict[str, Preset] = {name: Preset(name, dict(sizes)) for name, sizes in _TABLE.items()}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SystemExit(f"--preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]
