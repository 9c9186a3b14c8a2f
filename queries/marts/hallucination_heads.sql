-- one row per run, layer and head of the every-step capture: the head's attention ($score, image attention by
-- default) at the first token of object words that name an object in the image (grounded) against object
-- words that name one not in it (hallucinated, by the benchmark's annotation): both means, their difference
-- with a 95% Welch interval (Student's t at the Welch-Satterthwaite degrees of freedom, rounded down: with few
-- hallucinated tokens, several times wider than ± 1.96 standard errors), the Welch t and a standardised effect size, and the head's place among the run's
-- heads by how well it separates the two (|t|). Heads with fewer than two tokens of either kind are left out.
with kinds as (
    select run_id, layer, head, token_kind, cast(sum(n) as bigint) as n, sum(total) as total, sum(total_sq) as total_sq
    from stg_gen_head_scores
    where score = $score
    group by run_id, layer, head, token_kind
),
paired as (
    select
        g.run_id,
        g.layer,
        g.head,
        g.n as n_grounded,
        h.n as n_hallucinated,
        g.total / g.n as mean_grounded,
        h.total / h.n as mean_hallucinated,
        greatest(g.total_sq - g.total * g.total / g.n, 0) / (g.n - 1) as var_grounded,
        greatest(h.total_sq - h.total * h.total / h.n, 0) / (h.n - 1) as var_hallucinated
    from kinds as g
    join kinds as h on h.run_id = g.run_id and h.layer = g.layer and h.head = g.head and h.token_kind = 'hallucinated'
    where g.token_kind = 'grounded' and g.n >= 2 and h.n >= 2
),
compared as (
    select
        *,
        mean_grounded - mean_hallucinated as difference,
        sqrt(var_grounded / n_grounded + var_hallucinated / n_hallucinated) as se,
        case when var_grounded / n_grounded + var_hallucinated / n_hallucinated > 0 then
            (var_grounded / n_grounded + var_hallucinated / n_hallucinated) ^ 2
            / ((var_grounded / n_grounded) ^ 2 / (n_grounded - 1) + (var_hallucinated / n_hallucinated) ^ 2 / (n_hallucinated - 1))
        end as welch_df
    from paired
)
select
    c.run_id,
    r.model,
    r.benchmark,
    c.layer,
    c.head,
    l.stage,
    c.n_grounded,
    c.n_hallucinated,
    c.mean_grounded,
    c.mean_hallucinated,
    c.difference,
    c.welch_df,
    c.difference - t_975(c.welch_df) * c.se as ci_low,
    c.difference + t_975(c.welch_df) * c.se as ci_high,
    case when c.se > 0 then c.difference / c.se end as welch_t,
    case when c.var_grounded + c.var_hallucinated > 0 then c.difference / sqrt((c.var_grounded + c.var_hallucinated) / 2) end as effect_size,
    row_number() over (partition by c.run_id order by abs(coalesce(c.difference / nullif(c.se, 0), 0)) desc, c.layer, c.head) as separation_rank
from compared as c
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
order by c.run_id, separation_rank
