"""Once a dataset's activations exist, every extracted layer's SAE is trained."""

import dagster as dg

from sae_genomics_dagster.defs.datasets import jobs as dataset_jobs
from sae_genomics_dagster.defs.sae import jobs as sae_jobs
from sae_genomics_dagster.resources import ArtefactsResource


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[dataset_jobs.dataset_pipeline_job],
    request_job=sae_jobs.sae_pipeline_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When a dataset's pipeline has extracted activations, requests the SAE training of every "
    "extracted layer.",
)
def train_saes_after_activations(
    context: dg.RunStatusSensorContext, artefacts: ArtefactsResource
) -> list[dg.RunRequest] | dg.SkipReason:
    dataset = context.dagster_run.tags.get("dagster/partition")
    if not dataset:
        return dg.SkipReason("the run had no dataset partition")
    return [
        dg.RunRequest(
            partition_key=dg.MultiPartitionKey({"dataset": dataset, "layer": str(layer)}),
            run_key=f"{context.dagster_run.run_id}:{layer}",
        )
        for layer in artefacts.store.extracted_layers(dataset)
    ] or dg.SkipReason(f"no activations found for {dataset}")
