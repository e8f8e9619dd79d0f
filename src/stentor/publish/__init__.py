"""Publishing a run: its model card (`stentor card`) and the upload to the Hugging Face Hub (`stentor push`)."""
