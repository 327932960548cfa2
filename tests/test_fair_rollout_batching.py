"""The CPU rollout engine decodes waiting requests in batches (`cpu_backend/rollout_engine.py`).

Each test submits requests together, as OpenRLHF's agent executors do (one ``generate`` per sample, awaited
concurrently), and compares with the same requests decoded alone. The model's ``generate`` is wrapped to record
how many rows each call decoded, so a test also sees the batches, not only the tokens.
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.timeout(180)  # a broken engine can leave a request waiting forever

PROMPTS = [[1, 10, 20, 30], [1, 7], [1, 40, 41, 42, 43, 44, 45, 46, 47], [1, 99, 3, 5, 8, 13]]


@pytest.fixture(scope="module")
def vllm():
    from openrlhf_fair.cpu_backend import stand_ins

    if not stand_ins.install("vllm"):
        pytest.skip("a real vllm is installed: the stand-in is not used")
    import vllm

    yield vllm
    stand_ins.uninstall("vllm")


def make_engine(vllm, model_path, **kwargs):
    """An engine as OpenRLHF builds it; float32 so that greedy ties cannot flip between batch shapes."""
    kwargs = {"dtype": "float32", "seed": 3, **kwargs}
    engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(
        model=str(model_path), tensor_parallel_size=1, trust_remote_code=True,
        worker_extension_cls="openrlhf.trainer.ray.vllm_worker_wrap.WorkerWrap", **kwargs))
    engine.batch_sizes = []
    generate = engine.model.generate

    def recording_generate(*args, input_ids, **kw):
        engine.batch_sizes.append(input_ids.shape[0])
        return generate(*args, input_ids=input_ids, **kw)

    engine.model.generate = recording_generate
    return engine


def run_together(vllm, engine, requests):
    """Submit every (prompt, params) at once; return their CompletionOutputs in order."""
    from vllm.inputs import TokensPrompt

    async def one(index, prompt, params):
        outputs = [out async for out in engine.generate(TokensPrompt(prompt_token_ids=prompt), params, f"r{index}")]
        return outputs[-1].outputs[0]

    async def main():
        return await asyncio.gather(*(one(i, prompt, params) for i, (prompt, params) in enumerate(requests)))

    completions = asyncio.run(main())
    assert engine.output_processor.get_num_unfinished_requests() == 0
    return completions


def run_alone(vllm, engine, requests):
    return [run_together(vllm, engine, [request])[0] for request in requests]


def greedy(vllm, max_tokens, **kwargs):
    return vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1, **kwargs)


def reference_greedy(engine, prompt, max_tokens):
    """Greedy decoding by hand: argmax of one unpadded forward pass per token."""
    import torch

    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            tokens.append(int(engine.model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt):]


def assert_same(batched, alone):
    for together, by_itself in zip(batched, alone):
        assert together.token_ids == by_itself.token_ids
        assert together.finish_reason == by_itself.finish_reason
        assert together.text == by_itself.text
        assert [list(step) for step in together.logprobs] == [list(step) for step in by_itself.logprobs]
        values = [next(iter(step.values())).logprob for step in together.logprobs]
        assert values == pytest.approx([next(iter(step.values())).logprob for step in by_itself.logprobs], abs=1e-4)
        assert together.cumulative_logprob == pytest.approx(by_itself.cumulative_logprob, abs=1e-4)


def test_one_request_is_one_call_of_one_row(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama)
    [completion] = run_together(vllm, engine, [(PROMPTS[0], greedy(vllm, 6, min_tokens=6))])
    assert engine.batch_sizes == [1]
    assert completion.token_ids == reference_greedy(engine, PROMPTS[0], 6)
    assert completion.finish_reason == "length" and len(completion.logprobs) == 6


def test_mixed_prompt_lengths_decode_in_one_call_as_they_would_alone(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama)
    requests = [(prompt, greedy(vllm, 8, min_tokens=8)) for prompt in PROMPTS]
    batched = run_together(vllm, engine, requests)
    assert engine.batch_sizes == [len(PROMPTS)]  # one left-padded call
    alone = run_alone(vllm, engine, requests)
    assert engine.batch_sizes[1:] == [1] * len(PROMPTS)
    assert_same(batched, alone)
    for (prompt, _), completion in zip(requests, batched):  # padding left the short prompts' tokens intact
        assert completion.token_ids == reference_greedy(engine, prompt, 8)


def test_mixed_max_tokens_each_request_stops_at_its_own(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama)
    limits = [1, 3, 12, 7]
    requests = [(prompt, greedy(vllm, limit, ignore_eos=True)) for prompt, limit in zip(PROMPTS, limits)]
    batched = run_together(vllm, engine, requests)
    assert engine.batch_sizes == [len(PROMPTS)]
    assert [len(completion.token_ids) for completion in batched] == limits
    assert all(completion.finish_reason == "length" for completion in batched)
    assert_same(batched, run_alone(vllm, engine, requests))


def test_a_stop_token_ends_its_row_only(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama)
    free = run_together(vllm, engine, [(prompt, greedy(vllm, 8, ignore_eos=True)) for prompt in PROMPTS])
    stop = free[0].token_ids[2]  # the first prompt's third greedy token
    requests = [(prompt, greedy(vllm, 8, stop_token_ids=[stop])) for prompt in PROMPTS]
    engine.batch_sizes.clear()
    batched = run_together(vllm, engine, requests)
    assert engine.batch_sizes == [len(PROMPTS)]
    first = batched[0]
    cut = free[0].token_ids.index(stop) + 1
    assert first.token_ids == free[0].token_ids[:cut] and first.finish_reason == "stop"
    assert first.stop_reason == stop
    for completion, unstopped in zip(batched, free):  # rows never pad past their stop token nor lose tokens
        if stop not in unstopped.token_ids and engine.eos_token_ids[0] not in unstopped.token_ids:
            assert completion.token_ids == unstopped.token_ids and completion.finish_reason == "length"
    assert_same(batched, run_alone(vllm, engine, requests))


def test_more_requests_than_the_batch_size_run_in_several_calls(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama, max_num_seqs=3)
    requests = [(PROMPTS[i % len(PROMPTS)], greedy(vllm, 4 + i, min_tokens=2)) for i in range(8)]
    batched = run_together(vllm, engine, requests)
    assert engine.batch_sizes == [3, 3, 2]
    assert_same(batched, run_alone(vllm, engine, requests))


def test_different_sampling_parameters_are_never_mixed_in_a_call(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama)
    sampled = vllm.SamplingParams(temperature=1.0, max_tokens=5, logprobs=1)
    requests = [(PROMPTS[0], greedy(vllm, 5)), (PROMPTS[1], sampled), (PROMPTS[2], greedy(vllm, 6)),
                (PROMPTS[3], sampled)]
    batched = run_together(vllm, engine, requests)
    assert sorted(engine.batch_sizes) == [2, 2]
    alone = run_alone(vllm, engine, [requests[0], requests[2]])
    assert_same([batched[0], batched[2]], alone)


def test_a_seeded_run_repeats_bit_for_bit(vllm, tiny_llama):
    """Sampling draws from the generator the engine seeded at start: a fresh engine with the same seed, given
    the same requests (one prompt's samples, as a one-prompt rollout batch sends them), gives the same tokens and
    log-probs; another seed gives other tokens."""
    sampled = vllm.SamplingParams(temperature=1.0, max_tokens=10, min_tokens=10, logprobs=1)
    requests = [(PROMPTS[0], sampled)] * 4

    def run(seed):
        engine = make_engine(vllm, tiny_llama, dtype="bfloat16", seed=seed)
        first = run_together(vllm, engine, requests)
        second = run_together(vllm, engine, requests)  # the next rollout batch
        assert engine.batch_sizes == [4, 4]
        return [(c.token_ids, [list(s.items()) for s in c.logprobs]) for c in first + second]

    one, again, other = run(3), run(3), run(4)
    assert one == again
    assert one != other
    assert len({tuple(tokens) for tokens, _ in one}) > 1  # the samples of one prompt differ from each other


def test_a_request_with_its_own_seed_runs_alone_and_repeats(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama)
    seeded = vllm.SamplingParams(temperature=1.0, max_tokens=8, min_tokens=8, seed=11)
    other = vllm.SamplingParams(temperature=1.0, max_tokens=8, min_tokens=8)
    [alone] = run_together(vllm, engine, [(PROMPTS[0], seeded)])
    engine.batch_sizes.clear()
    mixed = run_together(vllm, engine, [(PROMPTS[1], other), (PROMPTS[0], seeded), (PROMPTS[2], other)])
    assert sorted(engine.batch_sizes) == [1, 2]
    assert mixed[1].token_ids == alone.token_ids


def test_an_error_reaches_every_request_of_the_batch(vllm, tiny_llama):
    engine = make_engine(vllm, tiny_llama)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    engine.model.generate = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        run_together(vllm, engine, [(prompt, greedy(vllm, 3)) for prompt in PROMPTS])
    assert engine._pending == []
