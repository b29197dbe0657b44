"""drlab mobility agent: block layer, change tracker, batcher and uploader of protected disks."""
