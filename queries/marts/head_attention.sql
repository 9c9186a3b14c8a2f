with per_head as (
    select
        run_id,
        model,
        benchmark,
        query,
        layer,
        head,
        count(*) as n_samples,
        avg(image_sum) as mean_image_sum,
        stddev_samp(image_sum) as sd_image_sum,
        avg(concentration) as mean_concentration,
        avg(concentration_x_sum) as mean_concentration_x_sum
    from stg_head_metrics
    group by run_id, model, benchmark, query, layer, head
),

final as (
    select * from per_head
)

select * from final
