"""Domain-balanced mini-batches: every batch holds the same number of cells from every domain.

Alignment losses compare the latent codes of domains inside a batch, so a batch missing a domain
would silently drop (or, with naive code, make NaN) that domain's term. Here each domain is drawn
from its own shuffled stream, recycled when it runs out, so small domains are oversampled rather
than absent.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class DomainBalancedBatches:
    """Index batches with ``per_domain`` cells from each domain.

    One epoch covers the largest domain once (``ceil(max_count / per_domain)`` batches); smaller
    domains are cycled through fresh permutations. The order depends only on ``seed`` and the
    epoch number, so an interrupted training run resumes on the same batches.

    Parameters
    ----------
    domain_ids : int ndarray of shape (n,)
        Domain index of each cell taking part in training.
    per_domain : int
        Cells per domain in each batch (capped at the domain's size).
    seed : int
    """

    def __init__(self, domain_ids: np.ndarray, per_domain: int, seed: int) -> None:
        domain_ids = np.asarray(domain_ids)
        if domain_ids.size == 0:
            raise ValueError("no cells to batch")
        if per_domain < 1:
            raise ValueError(f"per_domain must be >= 1, got {per_domain}")
        self.members = [np.flatnonzero(domain_ids == d) for d in np.unique(domain_ids)]
        self.per_domain = int(per_domain)
        self.seed = int(seed)
        largest = max(len(m) for m in self.members)
        self.n_batches = int(np.ceil(largest / min(self.per_domain, largest)))

    def __len__(self) -> int:
        return self.n_batches

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        """Yield the ``len(self)`` index batches of ``epoch`` (int ndarray of shape (b,))."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        streams = []
        for members in self.members:
            take = min(self.per_domain, len(members))
            reps = int(np.ceil(self.n_batches * take / len(members)))
            order = np.concatenate([rng.permutation(members) for _ in range(reps)])
            streams.append((order, take))
        for b in range(self.n_batches):
            yield np.concatenate([order[b * take:(b + 1) * take] for order, take in streams])
