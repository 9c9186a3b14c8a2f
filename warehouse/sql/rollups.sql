-- The per-part rollups, as table macros over a relation of head_metrics rows named by `rows`: the
-- warehouse runs them over each part at commit time, and the staging views over the rows of runs
-- whose committed rollups were built from other definitions (another version of definitions.sql).

-- per (run, query, layer, head, score) for every summarised value (summarised_names(): the head scores and
-- the segments' attention mass): the samples that have it, the sum and sum of squares of its values and
-- its largest value (means and sample standard deviations add up exactly over parts). Long, one row per
-- value: a new score is a new name in head_score_names() and its formula in head_score(), nothing here.
create or replace macro summarise_head_metrics(rows) as table
    with valued as (
        select m.run_id, m.query, m.layer, m.head, s.score, head_score(s.score, m) as value
        from query_table(rows) as m, (select unnest(summarised_names()) as score) as s
    )
    select
        run_id,
        query,
        layer,
        head,
        score,
        count(value) as n,
        coalesce(sum(value), 0) as total,
        coalesce(sum(value * value), 0) as total_sq,
        max(value) as max_value
    from valued
    group by run_id, query, layer, head, score;

-- per (run, query, score, place 1..ranks_kept(), layer, head): in how many of the samples the head held that
-- place among the sample's heads that have a value of that score (head_order_key: ties to the lower layer,
-- then head)
create or replace macro rank_head_metrics(rows) as table
    with scored as (
        select
            m.run_id,
            m.sample_idx,
            m.query,
            m.layer,
            m.head,
            s.score,
            head_score(s.score, m) as value
        from query_table(rows) as m, (select unnest(head_score_names()) as score) as s
    ),
    placed as (
        select
            run_id,
            query,
            score,
            layer,
            head,
            row_number() over (partition by run_id, sample_idx, query, score order by head_order_key(value, layer, head) desc) as rank
        from scored
        where value is not null and score_orders_heads(score)
    )
    select run_id, query, score, rank, layer, head, count(*) as n
    from placed
    where rank <= ranks_kept()
    group by run_id, query, score, rank, layer, head;

-- a run's rollup rows of many parts added up to one row per (run, query, layer, head, score): the one
-- definition of adding up parts, for staging (stg_head_scores) and for the rollups a reading machine keeps
create or replace macro add_up_head_scores(parts) as table
    select run_id, query, layer, head, score, cast(sum(n) as bigint) as n, sum(total) as total, sum(total_sq) as total_sq, max(max_value) as max_value
    from query_table(parts)
    group by run_id, query, layer, head, score;

-- the same for the places of heads (stg_head_ranks)
create or replace macro add_up_head_ranks(parts) as table
    select run_id, query, score, rank, layer, head, cast(sum(n) as bigint) as n
    from query_table(parts)
    group by run_id, query, score, rank, layer, head;

-- the values of a part's gen_metrics rows (``tokens``: the part's gen_tokens, which say what each step produced), by
-- step bucket and token kind, for every summarised value
create or replace macro gen_metric_values(rows, tokens) as table
    with kinded as (
        select m.*, step_bucket(m.step) as step_bucket, token_kind(t.word_start, t.object_status) as token_kind
        from query_table(rows) as m
        left join query_table(tokens) as t on t.run_id = m.run_id and t.sample_idx = m.sample_idx and t.step = m.step
    )
    select k.run_id, k.sample_idx, k.step, k.step_bucket, k.token_kind, k.layer, k.head, s.score, head_score(s.score, k) as value
    from kinded as k, (select unnest(summarised_names()) as score) as s;

-- per (run, step bucket, token kind, layer, score): the sums of summarise_head_metrics over the layer's heads and
-- the bucket's tokens (what attention-by-step marts read: a few thousand rows a part however many samples it holds)
create or replace macro summarise_gen_metrics(rows, tokens) as table
    select
        run_id,
        step_bucket,
        token_kind,
        layer,
        score,
        count(value) as n,
        coalesce(sum(value), 0) as total,
        coalesce(sum(value * value), 0) as total_sq,
        max(value) as max_value
    from gen_metric_values(rows, tokens)
    group by run_id, step_bucket, token_kind, layer, score;

-- per (run, step bucket, object-word kind, layer, head, score) at the first token of grounded and hallucinated object
-- words, with a sample as the unit: each sample's mean over its words of the kind in the bucket, and their mean step (a
-- word an answer repeats is one sample's evidence, not several), then over the samples: n (samples), n_tokens (words),
-- the sums of the samples' mean values, mean steps, their squares and products, the largest value. hallucination_heads
-- compares the kinds within a bucket (hallucinated words come later in an answer, where image attention is lower for
-- every word), adjusted for the steps within it, across samples.
create or replace macro summarise_gen_heads(rows, tokens) as table
    with per_sample as (
        select
            run_id, step_bucket, token_kind, layer, head, score, sample_idx,
            count(value) as n_tokens, avg(value) as value, avg(step) as step, max(value) as max_value
        from gen_metric_values(rows, tokens)
        where token_kind in ('grounded', 'hallucinated') and value is not null
        group by run_id, step_bucket, token_kind, layer, head, score, sample_idx
    )
    select
        run_id,
        step_bucket,
        token_kind,
        layer,
        head,
        score,
        count(*) as n,
        sum(n_tokens) as n_tokens,
        sum(value) as total,
        sum(value * value) as total_sq,
        sum(step) as total_step,
        sum(step * step) as total_step_sq,
        sum(step * value) as total_step_value,
        max(max_value) as max_value
    from per_sample
    group by run_id, step_bucket, token_kind, layer, head, score;

-- a run's long-answer rollup rows of many parts added up (stg_gen_scores, stg_gen_head_scores, and the compacted
-- tables a reading machine keeps): the one definition of adding up their parts
create or replace macro add_up_gen_scores(parts) as table
    select run_id, step_bucket, token_kind, layer, score, cast(sum(n) as bigint) as n, sum(total) as total, sum(total_sq) as total_sq, max(max_value) as max_value
    from query_table(parts)
    group by run_id, step_bucket, token_kind, layer, score;

create or replace macro add_up_gen_head_scores(parts) as table
    select
        run_id, step_bucket, token_kind, layer, head, score,
        cast(sum(n) as bigint) as n, cast(sum(n_tokens) as bigint) as n_tokens, sum(total) as total, sum(total_sq) as total_sq,
        sum(total_step) as total_step, sum(total_step_sq) as total_step_sq, sum(total_step_value) as total_step_value, max(max_value) as max_value
    from query_table(parts)
    group by run_id, step_bucket, token_kind, layer, head, score;
