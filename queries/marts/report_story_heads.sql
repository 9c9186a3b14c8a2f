-- Where the visual heads sit and how concentrated they are, for the report's front-page sentences: per model and
-- benchmark one extraction run (the first by shown_order in stg_runs with scores for $query, the run the report's
-- panels show), its top $k heads by mean $score (ranked as visual_heads ranks: mean score, then layer, head)
-- against all its heads: their shares in the early, mid and late stages (and each stage's share of all heads: the
-- shares a ranking by chance would give), their mean depth, and the mean concentration and image-attention sum of
-- the top heads and of every head.
with per_head as (
    select
        run_id,
        layer,
        head,
        sum(total) filter (where score = $score) / sum(n) filter (where score = $score) as mean_score,
        sum(total) filter (where score = 'concentration') / sum(n) filter (where score = 'concentration') as concentration,
        sum(total) filter (where score = 'image_sum') / sum(n) filter (where score = 'image_sum') as image_sum
    from stg_head_scores
    where query = $query
    group by run_id, layer, head
),
shown as (
    select run_id
    from stg_runs
    where kind = 'extract' and run_id in (select run_id from per_head)
    qualify shown_order = min(shown_order) over (partition by model, benchmark)
),
ranked as (
    select
        run_id,
        layer,
        head,
        row_number() over (partition by run_id order by mean_score desc nulls last, layer, head) as rank
    from per_head
    where run_id in (select run_id from shown)
),
heads as (
    select
        r.run_id,
        u.model,
        u.benchmark,
        r.rank <= $k as top,
        stage(r.layer, u.n_layers) as stage,
        depth(r.layer, u.n_layers) as depth,
        h.concentration,
        h.image_sum,
        u.n_layers,
        u.n_heads
    from ranked as r
    join per_head as h using (run_id, layer, head)
    join stg_runs as u using (run_id)
),
final as (
    select
        run_id,
        model,
        benchmark,
        any_value(n_layers) as n_layers,
        any_value(n_layers) * any_value(n_heads) as n_heads_all,
        count(*) filter (where top) as n_top,
        avg(case when stage = 'early' then 1.0 else 0.0 end) filter (where top) as early_share,
        avg(case when stage = 'mid' then 1.0 else 0.0 end) filter (where top) as mid_share,
        avg(case when stage = 'late' then 1.0 else 0.0 end) filter (where top) as late_share,
        avg(case when stage = 'early' then 1.0 else 0.0 end) as early_share_all,
        avg(case when stage = 'mid' then 1.0 else 0.0 end) as mid_share_all,
        avg(case when stage = 'late' then 1.0 else 0.0 end) as late_share_all,
        avg(depth) filter (where top) as top_depth,
        avg(concentration) filter (where top) as top_concentration,
        avg(concentration) as all_concentration,
        avg(image_sum) filter (where top) as top_image_sum,
        avg(image_sum) as all_image_sum
    from heads
    group by run_id, model, benchmark
)
select * from final
order by benchmark, model, run_id
