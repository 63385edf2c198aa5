"""GSIL reproduction suite: SFT, self-play (SPIN, GSIL) and DPO training, generation and evaluation."""

__version__ = "0.1.0"
