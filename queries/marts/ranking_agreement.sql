-- one row per k of a grid: how far two head rankings agree. A ranking is a run's heads ordered by the
-- mean of a head score over the run's samples (as head_ranking orders them: missing scores last, ties
-- to the lower layer, then head), or a ranking run's heads by their score (an attribution run of attnwh
-- attribute: causal importance; an imported ranking: the file's score; query and score do not apply); the two
-- may differ in run (benchmark, model of the same shape, kind), query and score: each run's model and benchmark are
-- shown beside it, so that a mismatched pair is told from a matched one. Heads are matched by (layer, head), and
-- only those both rankings score count: a head either leaves unscored (an attribution's head its patterns never
-- ablate) is in neither ranking. Over them: Spearman's rho (Pearson's correlation of average ranks, ties sharing
-- their mean rank) and Kendall's tau-b (ties corrected), both null below 5 heads (too few to say anything);
-- and for each k up to their number: the top-k heads both rankings share, and their Jaccard index.
with a as (
    select layer, head, case when n > 0 then total / n end as score
    from stg_head_scores
    where run_id = $run_a and query = $query_a and score = $score_a
    union all
    select layer, head, score from stg_head_attributions where run_id = $run_a
    union all
    select layer, head, score from imported_rankings where run_id = $run_a
),
b as (
    select layer, head, case when n > 0 then total / n end as score
    from stg_head_scores
    where run_id = $run_b and query = $query_b and score = $score_b
    union all
    select layer, head, score from stg_head_attributions where run_id = $run_b
    union all
    select layer, head, score from imported_rankings where run_id = $run_b
),
scored as (
    select layer, head, a.score as score_a, b.score as score_b
    from a join b using (layer, head)
    where a.score is not null and b.score is not null
),
ranked as (
    select
        *,
        rank() over (order by score_a) + (count(*) over (partition by score_a) - 1) / 2 as rank_a,
        rank() over (order by score_b) + (count(*) over (partition by score_b) - 1) / 2 as rank_b,
        -- places for the top-k cuts: ties to the lower layer, then head, as head_ranking orders them
        row_number() over (order by score_a desc, layer, head) as place_a,
        row_number() over (order by score_b desc, layer, head) as place_b
    from scored
),
pairs as (
    select
        count(*) filter (where sign(x.score_a - y.score_a) * sign(x.score_b - y.score_b) > 0) as concordant,
        count(*) filter (where sign(x.score_a - y.score_a) * sign(x.score_b - y.score_b) < 0) as discordant,
        count(*) filter (where x.score_a = y.score_a and x.score_b <> y.score_b) as ties_a,
        count(*) filter (where x.score_b = y.score_b and x.score_a <> y.score_a) as ties_b
    from scored as x
    join scored as y on (x.layer, x.head) < (y.layer, y.head)
),
counted as (
    select count(*) as n_heads from scored
),
correlations as (
    select
        n.n_heads,
        -- null below 5 heads (4 heads give rho in steps of 0.2 and tau in steps of 1/6: no figure to report), and,
        -- as tau-b is, where a ranking is one tie (DuckDB's corr gives NaN there)
        case when n.n_heads >= min_agreement_heads() then (select case when var_pop(rank_a) > 0 and var_pop(rank_b) > 0 then corr(rank_a, rank_b) end from ranked) end as spearman,
        case
            when n.n_heads >= min_agreement_heads() and (concordant + discordant + ties_a) * (concordant + discordant + ties_b) > 0
            then (concordant - discordant) / sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
        end as kendall_tau_b
    from pairs, counted as n
),
-- two models of different shapes have no common heads to match by (layer, head): refused rather than compared
shape_check as (
    select (
        select format(
            'run_a {} has {} layers × {} heads and run_b {} has {} × {}: ranking_agreement compares heads of models of one shape',
            x.run_id, x.n_layers, x.n_heads, y.run_id, y.n_layers, y.n_heads
        )
        from stg_runs as x, stg_runs as y
        where x.run_id = $run_a and y.run_id = $run_b and (x.n_layers <> y.n_layers or x.n_heads <> y.n_heads)
    ) as refused,
    coalesce((select kind not in ('attribution', 'ranking') from stg_runs where run_id = $run_a), true) as scored_a,
    coalesce((select kind not in ('attribution', 'ranking') from stg_runs where run_id = $run_b), true) as scored_b
),
grid as (
    select unnest([1, 5, 10, 20, 50, 100, 200]) as k
),
top_k as (  -- the heads in both top-k sets
    select g.k, (select count(*) from ranked where place_a <= g.k and place_b <= g.k) as shared
    from grid as g
)
select
    $run_a as run_a,
    $run_b as run_b,
    (select model from stg_runs where run_id = $run_a) as model_a,
    (select benchmark from stg_runs where run_id = $run_a) as benchmark_a,
    (select model from stg_runs where run_id = $run_b) as model_b,
    (select benchmark from stg_runs where run_id = $run_b) as benchmark_b,
    -- an attribution run or an imported ranking has no query or attention score: null there
    case when s.scored_a then $query_a end as query_a,
    case when s.scored_b then $query_b end as query_b,
    case when s.scored_a then $score_a end as score_a,
    case when s.scored_b then $score_b end as score_b,
    c.n_heads,
    c.spearman,
    c.kendall_tau_b,
    t.k,
    t.shared,
    t.shared / (2 * t.k - t.shared) as jaccard
from top_k as t, correlations as c, shape_check as s
where t.k <= c.n_heads and (s.refused is null or error(s.refused) is null)
order by t.k
