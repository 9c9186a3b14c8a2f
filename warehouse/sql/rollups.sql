-- The per-part rollups, as table macros over a relation of head_metrics rows named by `rows`: the
-- warehouse runs them over each part at commit time, and the staging views over the rows of runs
-- whose committed rollups were built from other definitions (another version of definitions.sql).

-- per (run, query, layer, head): count, sums and sums of squares of the head scores, and the sums of
-- the segment shares (means and sample standard deviations add up exactly over parts)
create or replace macro summarise_head_metrics(rows) as table
    select
        run_id,
        query,
        layer,
        head,
        count(*) as n,
        count(concentration(image_entropy, n_image)) as n_concentration,
        sum(image_sum::double) as sum_image,
        sum(image_sum::double * image_sum::double) as sumsq_image,
        max(image_sum) as max_image,
        coalesce(sum(concentration(image_entropy, n_image)), 0) as sum_concentration,
        coalesce(sum(concentration(image_entropy, n_image) ** 2), 0) as sumsq_concentration,
        coalesce(sum(head_score('concentration_x_sum', image_sum, image_entropy, n_image, region_hit)), 0) as sum_concentration_x_sum,
        coalesce(sum(head_score('concentration_x_sum', image_sum, image_entropy, n_image, region_hit) ** 2), 0) as sumsq_concentration_x_sum,
        count(region_hit) as n_region_hit,
        coalesce(sum(region_hit::double), 0) as sum_region_hit,
        coalesce(sum(region_hit::double * region_hit::double), 0) as sumsq_region_hit,
        sum(bos_sum::double) as sum_bos,
        sum(system_sum::double) as sum_system,
        sum(prompt_sum::double) as sum_prompt,
        sum(generated_sum::double) as sum_generated
    from query_table(rows)
    group by run_id, query, layer, head;

-- per (run, query, score, place 1..ranks_kept(), layer, head): in how many of the samples the head held that
-- place among the sample's heads by that score (head_order_key: missing scores last, ties to the
-- lower layer, then head)
create or replace macro rank_head_metrics(rows) as table
    with scored as (
        select
            m.run_id,
            m.sample_idx,
            m.query,
            m.layer,
            m.head,
            s.score,
            head_score(s.score, m.image_sum, m.image_entropy, m.n_image, m.region_hit) as value
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
    )
    select run_id, query, score, rank, layer, head, count(*) as n
    from placed
    where rank <= ranks_kept()
    group by run_id, query, score, rank, layer, head;
