"""Scale-out on Dask: clusters for a job, and the lead tables split into partitions of whole accounts."""
