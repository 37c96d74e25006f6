//! VP8 decoding with libvpx (the system library, feature `vp8`), for the
//! ladder: a VP8 publish cannot go into HLS as it is, so its frames are
//! decoded here and encoded to H.264 by openh264 like any ladder rung.
//!
//! Only the calls the ladder needs: init, decode one frame, take its
//! picture, destroy. The picture borrows libvpx's buffer until the next
//! decode, which the borrow checker enforces (`&mut self`).

use std::os::raw::c_int;

use openh264::formats::YUVSource;
use vpx_sys as ffi;

/// A libvpx VP8 decoder.
pub struct Vp8Decoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
}

// SAFETY: the context is used from one thread at a time (`&mut self`);
// libvpx keeps no thread-local state for it.
unsafe impl Send for Vp8Decoder {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VpxError(pub i32);

impl std::fmt::Display for VpxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "libvpx error {}", self.0)
    }
}

impl std::error::Error for VpxError {}

/// One decoded picture (I420), borrowed from the decoder.
pub struct VpxPicture<'a> {
    img: &'a ffi::vpx_image_t,
}

impl Vp8Decoder {
    pub fn new() -> Result<Vp8Decoder, VpxError> {
        // SAFETY: all-zero is the documented state of a context before init.
        let mut ctx: Box<ffi::vpx_codec_ctx_t> = Box::new(unsafe { std::mem::zeroed() });
        let cfg = ffi::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        // SAFETY: `ctx` is a zeroed context that lives in its box as long as
        // the decoder; `cfg` outlives the call; the ABI version is the one
        // the bindings were generated for (checked by libvpx).
        let err = unsafe {
            ffi::vpx_codec_dec_init_ver(
                &mut *ctx,
                ffi::vpx_codec_vp8_dx(),
                &cfg,
                0,
                ffi::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        if err != ffi::vpx_codec_err_t::VPX_CODEC_OK {
            return Err(VpxError(err as i32));
        }
        Ok(Vp8Decoder { ctx })
    }

    /// Decodes one whole frame; returns its picture, if it shows one.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Option<VpxPicture<'_>>, VpxError> {
        let len = u32::try_from(frame.len()).map_err(|_| VpxError(-1))?;
        // SAFETY: the context was initialised in `new`; `frame` is valid
        // for `len` bytes during the call.
        let err = unsafe {
            ffi::vpx_codec_decode(&mut *self.ctx, frame.as_ptr(), len, std::ptr::null_mut(), 0)
        };
        if err != ffi::vpx_codec_err_t::VPX_CODEC_OK {
            return Err(VpxError(err as i32));
        }
        let mut iter: ffi::vpx_codec_iter_t = std::ptr::null();
        // SAFETY: as above; the image stays valid until the next decode,
        // which needs `&mut self` and so ends this borrow first.
        let img = unsafe { ffi::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
        // SAFETY: null or a valid image owned by the decoder.
        let Some(img) = (unsafe { img.as_ref() }) else {
            return Ok(None);
        };
        if img.fmt != ffi::vpx_img_fmt::VPX_IMG_FMT_I420 || img.d_w == 0 || img.d_h == 0 {
            return Err(VpxError(-2));
        }
        Ok(Some(VpxPicture { img }))
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            ffi::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

impl VpxPicture<'_> {
    fn plane(&self, i: usize) -> &[u8] {
        let (w, h) = self.dimensions();
        let rows = if i == 0 { h } else { h.div_ceil(2) };
        let width = if i == 0 { w } else { w.div_ceil(2) };
        let stride = self.img.stride[i].max(0) as usize;
        let len = stride * rows.saturating_sub(1) + width;
        // SAFETY: libvpx's I420 planes hold `rows` rows of `stride` bytes
        // (the last at least `width`) for the displayed size.
        unsafe { std::slice::from_raw_parts(self.img.planes[i], len) }
    }
}

impl YUVSource for VpxPicture<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.img.d_w as usize, self.img.d_h as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let s = |i: usize| self.img.stride[i].max(0) as usize;
        (s(0), s(1), s(2))
    }

    fn y(&self) -> &[u8] {
        self.plane(0)
    }

    fn u(&self) -> &[u8] {
        self.plane(1)
    }

    fn v(&self) -> &[u8] {
        self.plane(2)
    }
}
