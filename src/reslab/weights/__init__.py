"""Reading and writing weights, one floor under the engine: the record a reslab weights file
carries (record), the tensors it may hold (tensors), reading any weights file (reading),
torchvision's pretrained weights (pretrained), foreign layouts loaded into a reslab model
(layouts), loading a checkpoint for use (checkpoint), importing foreign weights once (importer)
and growing a checkpoint into a deeper one (grow). Nothing here imports the engine."""
