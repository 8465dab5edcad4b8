"""The router's data-dependent start (trainer/methods/router_init.py): the centre and k-means rows."""
import torch

from trainer.data.batch import Encoded
from trainer.methods.router import Router
from trainer.methods.router_init import fit_router, kmeans, router_inputs


def clustered(n_per: int = 64, k: int = 4, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k well separated clusters riding on a large shared direction (the anisotropy of real embeddings)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=gen) * 3
    labels = torch.arange(k).repeat_interleave(n_per)
    x = torch.randn(d, generator=gen) * 20 + centres[labels] + 0.3 * torch.randn(len(labels), d, generator=gen)
    return x, labels


def routed_table(router: Router, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    index = router.eval()(x).index
    return torch.stack([torch.bincount(index[labels == j], minlength=4) for j in range(4)]).float()


def test_kmeans_finds_the_clusters_deterministically():
    x, labels = clustered()
    a = kmeans(x, 4, torch.Generator().manual_seed(3))
    b = kmeans(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    nearest = torch.cdist(x.double(), a).argmin(1)
    # each true cluster maps to exactly one centroid and no two clusters share one
    pairs = {(int(t), int(c)) for t, c in zip(labels, nearest)}
    assert len(pairs) == 4 and len({c for _, c in pairs}) == 4


def test_kmeans_rows_give_every_cluster_its_own_prompt_where_orthogonal_rows_need_not():
    x, labels = clustered()
    fitted = Router(16, 4, centered=True)
    fit_router(fitted, x, rows_from_kmeans=True, seed=0)
    torch.testing.assert_close(fitted.center, x.double().mean(0).float())
    torch.testing.assert_close(fitted.proj.weight.norm(dim=1), torch.ones(4))  # the orthogonal init's scale
    table = routed_table(fitted, x, labels)
    assert (table.max(1).values == 64).all() and len(set(table.argmax(1).tolist())) == 4  # a permutation
    centred_only = Router(16, 4, centered=True)
    fit_router(centred_only, x, rows_from_kmeans=False, seed=0)
    torch.testing.assert_close(centred_only.proj.weight @ centred_only.proj.weight.t(), torch.eye(4), atol=1e-5,
                               rtol=0)  # rows untouched: still orthogonal


def test_raw_router_keeps_no_centre_and_too_few_inputs_keep_the_rows():
    raw = Router(16, 4)
    before = raw.proj.weight.clone()
    fit_router(raw, torch.ones(10, 16), rows_from_kmeans=True, seed=0)  # one distinct input < 4 prompts
    assert raw.center is None and torch.equal(raw.proj.weight, before)


def test_router_inputs_are_masked_means_of_an_even_sample():
    embed = torch.nn.Embedding(20, 8)
    rows = [[3, 4, 1], [5, 1], [6, 7, 8, 1], [9, 1], [10, 11, 1]]
    data = Encoded(examples=[None] * 5, task_ids=[0] * 5, input_ids=rows, labels=[[1]] * 5, truncated=0)
    x = router_inputs(embed, data, pad_id=0, device="cpu", max_examples=3, batch_size=2)
    assert x.shape == (3, 8)  # stride ceil(5 / 3) = 2: examples 0, 2, 4
    for got, i in zip(x, (0, 2, 4)):
        torch.testing.assert_close(got, embed.weight[rows[i]].mean(0).detach())
