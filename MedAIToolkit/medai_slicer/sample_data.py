"""Register bundled samples (Resources/Samples) with Slicer's Sample Data module (needs the Slicer application)."""
from __future__ import annotations


def register_sample(sample_key: str, sample_name: str, thumbnail: str, extension: str) -> None:
    """One ``MedAIToolkit`` Sample Data entry loading ``medai.samples.sample_path(sample_key)`` as a volume."""
    import SampleData
    from medai.samples import sample_path

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedAIToolkit",
        sampleName=sample_name,
        thumbnailFileName=thumbnail,
        uris="file://" + sample_path(sample_key),
        fileNames=sample_name + extension,
        nodeNames=sample_name,
        loadFileType="VolumeFile",
    )
